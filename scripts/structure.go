//go:build ignore

// Command structure prints the structure measures of issue 11 for the Go code under the current
// directory (run it from the repository root: `go run scripts/structure.go`):
//
//   - lines per package (production and test files apart) and the largest production files;
//   - exported identifiers of the pkg module that no production code uses: neither another package
//     (of any module of the workspace: api, worker, bench, pkg) nor their own package. They are dead,
//     or used by tests only. Also those used only inside their own package (they could be unexported),
//     leaving out types that the signature of an identifier used elsewhere names, and the methods of
//     such interfaces (they are that identifier's API).
//
// What counts as an exported identifier: package-level functions, types, constants and variables, and
// methods (of interfaces too). Struct fields are left out: JSON, YAML, GORM and templates use them by
// reflection. A method counts as used when it implements an interface declared outside the workspace
// (fmt.Stringer, json.Marshaler, gorm's Tabler…), or one of the workspace whose method is called, or
// is one that the standard library finds through an unnamed interface (Unwrap, Is, As, Timeout).
// Packages kept out on purpose: pkg/client (the public Go client: its API is for users, not for this
// repository) and the test-support packages (testinfra, teststore, storetest, clienttest), whose
// exports exist for tests.
//
// Only the standard library is used: `go list -export -deps` gives the compiled export data of every
// dependency, and the workspace's packages are type-checked from source on top of it.
package main

import (
	"bytes"
	"cmp"
	"encoding/json"
	"flag"
	"fmt"
	"go/ast"
	"go/importer"
	"go/parser"
	"go/token"
	"go/types"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

const (
	root      = "github.com/cao-run/cao/"
	pkgModule = root + "pkg/"
)

// listed is what `go list -json` says of one package.
type listed struct {
	ImportPath   string
	Name         string
	Dir          string
	Export       string
	GoFiles      []string
	TestGoFiles  []string
	XTestGoFiles []string
	Standard     bool
}

// excluded reports whether a pkg package's exports are out of the count on purpose.
func excluded(path string) bool {
	rel := strings.TrimPrefix(path, pkgModule)
	if rel == "client" || strings.HasPrefix(rel, "client/") {
		return true // the public Go client
	}
	for _, seg := range strings.Split(rel, "/") {
		if strings.HasPrefix(seg, "test") || strings.HasSuffix(seg, "test") {
			return true // test support
		}
	}
	return false
}

// unnamedInterfaceMethods are found by the standard library through interfaces it does not name.
var unnamedInterfaceMethods = map[string]bool{"Unwrap": true, "Is": true, "As": true, "Timeout": true, "Temporary": true}

func main() {
	verbose := flag.Bool("v", false, "list every identifier, not only the counts per package")
	largest := flag.Int("largest", 10, "how many of the largest production files to list")
	flag.Parse()

	pkgs, err := goList()
	if err != nil {
		fmt.Fprintln(os.Stderr, "structure:", err)
		os.Exit(1)
	}
	printLines(pkgs, *largest)
	if err := printExports(pkgs, *verbose); err != nil {
		fmt.Fprintln(os.Stderr, "structure:", err)
		os.Exit(1)
	}
}

func goList() ([]listed, error) {
	cmd := exec.Command("go", "list", "-e", "-export", "-deps",
		"-json=ImportPath,Name,Dir,Export,GoFiles,TestGoFiles,XTestGoFiles,Standard", root+"...")
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list: %w", err)
	}
	var pkgs []listed
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p listed
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			return nil, err
		}
		pkgs = append(pkgs, p)
	}
	return pkgs, nil
}

func ours(p listed) bool { return strings.HasPrefix(p.ImportPath, root) }

func countLines(dir string, files []string) (total int, per map[string]int) {
	per = map[string]int{}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			continue
		}
		n := bytes.Count(b, []byte("\n"))
		per[f] = n
		total += n
	}
	return total, per
}

func printLines(pkgs []listed, largest int) {
	type file struct {
		path  string
		lines int
	}
	var files []file
	wd, _ := os.Getwd()
	fmt.Println("## Lines per package (production / test)")
	fmt.Println()
	fmt.Println("| package | production | test |")
	fmt.Println("| --- | ---: | ---: |")
	var prodSum, testSum int
	for _, p := range slices.SortedFunc(slices.Values(pkgs), func(a, b listed) int { return cmp.Compare(a.ImportPath, b.ImportPath) }) {
		if !ours(p) {
			continue
		}
		prod, per := countLines(p.Dir, p.GoFiles)
		test, _ := countLines(p.Dir, append(slices.Clone(p.TestGoFiles), p.XTestGoFiles...))
		prodSum += prod
		testSum += test
		fmt.Printf("| %s | %d | %d |\n", strings.TrimPrefix(p.ImportPath, root), prod, test)
		for f, n := range per {
			rel, err := filepath.Rel(wd, filepath.Join(p.Dir, f))
			if err != nil {
				rel = filepath.Join(p.Dir, f)
			}
			files = append(files, file{rel, n})
		}
	}
	fmt.Printf("| **all** | **%d** | **%d** |\n\n", prodSum, testSum)
	slices.SortFunc(files, func(a, b file) int { return cmp.Or(cmp.Compare(b.lines, a.lines), cmp.Compare(a.path, b.path)) })
	fmt.Printf("## The %d largest production files\n\n", largest)
	for _, f := range files[:min(largest, len(files))] {
		fmt.Printf("- %s: %d lines\n", f.path, f.lines)
	}
	fmt.Println()
}

// checked is one of our packages, type-checked from its production files.
type checked struct {
	path string
	pkg  *types.Package
	info *types.Info
}

func printExports(pkgs []listed, verbose bool) error {
	fset := token.NewFileSet()
	exports := map[string]string{}
	for _, p := range pkgs {
		if p.Export != "" {
			exports[p.ImportPath] = p.Export
		}
	}
	gc := importer.ForCompiler(fset, "gc", func(path string) (io.ReadCloser, error) {
		f, ok := exports[path]
		if !ok {
			return nil, fmt.Errorf("no export data for %s", path)
		}
		return os.Open(f)
	})
	source := map[string]*types.Package{}
	imp := importerFunc(func(path string) (*types.Package, error) {
		if p := source[path]; p != nil {
			return p, nil
		}
		return gc.Import(path)
	})

	// go list -deps lists a package after its dependencies: type-check ours in that order.
	var all []checked
	var others []*types.Package
	for _, p := range pkgs {
		if !ours(p) {
			if p.ImportPath != "unsafe" && p.Export != "" {
				if tp, err := gc.Import(p.ImportPath); err == nil {
					others = append(others, tp)
				}
			}
			continue
		}
		var files []*ast.File
		for _, f := range p.GoFiles {
			af, err := parser.ParseFile(fset, filepath.Join(p.Dir, f), nil, parser.SkipObjectResolution)
			if err != nil {
				return err
			}
			files = append(files, af)
		}
		info := &types.Info{Uses: map[*ast.Ident]types.Object{}, Types: map[ast.Expr]types.TypeAndValue{}}
		var firstErr error
		conf := types.Config{Importer: imp, Error: func(err error) {
			if firstErr == nil {
				firstErr = err
			}
		}}
		tp, _ := conf.Check(p.ImportPath, fset, files, info)
		if firstErr != nil {
			return fmt.Errorf("type-check %s: %w", p.ImportPath, firstErr)
		}
		source[p.ImportPath] = tp
		all = append(all, checked{p.ImportPath, tp, info})
	}

	// Every use in production code, by the package that uses it.
	usedBy := map[types.Object]map[string]bool{}
	for _, c := range all {
		for _, obj := range c.info.Uses {
			if obj.Pkg() == nil || !strings.HasPrefix(obj.Pkg().Path(), root) {
				continue
			}
			if f, ok := obj.(*types.Func); ok {
				obj = f.Origin()
			}
			if usedBy[obj] == nil {
				usedBy[obj] = map[string]bool{}
			}
			usedBy[obj][c.path] = true
		}
	}

	// Interfaces by method name: named ones of every package, and every interface type our code
	// writes (literals included).
	ifaces := map[string][]*types.Interface{}
	external := map[*types.Interface]bool{}
	addIface := func(it *types.Interface, ext bool) {
		for m := range it.Methods() {
			ifaces[m.Name()] = append(ifaces[m.Name()], it)
		}
		if ext {
			external[it] = true
		}
	}
	addIface(types.Universe.Lookup("error").Type().Underlying().(*types.Interface), true)
	for _, tp := range others {
		for _, name := range tp.Scope().Names() {
			if tn, ok := tp.Scope().Lookup(name).(*types.TypeName); ok {
				if it, ok := tn.Type().Underlying().(*types.Interface); ok {
					addIface(it, true)
				}
			}
		}
	}
	for _, c := range all {
		for _, tv := range c.info.Types {
			if it, ok := tv.Type.Underlying().(*types.Interface); ok && it.NumMethods() > 0 {
				addIface(it, false)
			}
		}
		for _, name := range c.pkg.Scope().Names() {
			if tn, ok := c.pkg.Scope().Lookup(name).(*types.TypeName); ok {
				if it, ok := tn.Type().Underlying().(*types.Interface); ok {
					addIface(it, false)
				}
			}
		}
	}
	// viaInterface reports whether method m of t implements an interface method that is used.
	viaInterface := func(t types.Type, m *types.Func) bool {
		if unnamedInterfaceMethods[m.Name()] {
			return true
		}
		for _, it := range ifaces[m.Name()] {
			if !types.Implements(t, it) && !types.Implements(types.NewPointer(t), it) {
				continue
			}
			if external[it] {
				return true
			}
			for im := range it.Methods() {
				if im.Name() == m.Name() && len(usedBy[im]) > 0 {
					return true
				}
			}
		}
		return false
	}

	// A type named in the signature of a function, method or variable that another package uses is
	// part of that API even when no other package names it (events.Log, a parameter of NewStreams),
	// and so are an interface's methods when the interface is: they are the contract implementers
	// follow. Such types do not count as "used in its own package only".
	outside := func(obj types.Object) bool {
		for user := range usedBy[obj] {
			if user != obj.Pkg().Path() {
				return true
			}
		}
		return false
	}
	exposed := map[types.Object]bool{}
	var expose func(t types.Type, seen map[types.Type]bool)
	expose = func(t types.Type, seen map[types.Type]bool) {
		if t == nil || seen[t] {
			return
		}
		seen[t] = true
		switch t := t.(type) {
		case *types.Named:
			if t.Obj().Pkg() != nil && strings.HasPrefix(t.Obj().Pkg().Path(), root) {
				exposed[t.Obj()] = true
			}
			for a := range t.TypeArgs().Types() {
				expose(a, seen)
			}
		case *types.Pointer:
			expose(t.Elem(), seen)
		case *types.Slice:
			expose(t.Elem(), seen)
		case *types.Array:
			expose(t.Elem(), seen)
		case *types.Chan:
			expose(t.Elem(), seen)
		case *types.Map:
			expose(t.Key(), seen)
			expose(t.Elem(), seen)
		case *types.Signature:
			for v := range t.Params().Variables() {
				expose(v.Type(), seen)
			}
			for v := range t.Results().Variables() {
				expose(v.Type(), seen)
			}
		}
	}
	for obj := range usedBy {
		if !outside(obj) {
			continue
		}
		switch obj.(type) {
		case *types.Func, *types.Var:
			expose(obj.Type(), map[types.Type]bool{})
		}
	}

	type finding struct{ pkg, name, kind, class string }
	var found []finding
	total := 0
	for _, c := range all {
		if !strings.HasPrefix(c.path, pkgModule) || excluded(c.path) {
			continue
		}
		classify := func(obj types.Object, name, kind string, api bool) {
			total++
			users := usedBy[obj]
			switch {
			case len(users) == 0 && !api:
				found = append(found, finding{c.path, name, kind, "unused"})
			case len(users) == 1 && users[c.path] && !api:
				found = append(found, finding{c.path, name, kind, "own package only"})
			}
		}
		scope := c.pkg.Scope()
		for _, name := range scope.Names() {
			obj := scope.Lookup(name)
			if obj.Exported() {
				// An exposed type that nothing uses at all still counts as unused.
				classify(obj, name, kindOf(obj), exposed[obj] && len(usedBy[obj]) > 0)
			}
			tn, ok := obj.(*types.TypeName)
			if !ok || tn.IsAlias() {
				continue
			}
			if it, ok := tn.Type().Underlying().(*types.Interface); ok {
				contract := outside(obj) || exposed[obj]
				for m := range it.ExplicitMethods() {
					if m.Exported() {
						classify(m, name+"."+m.Name(), "interface method", contract && len(usedBy[m]) > 0)
					}
				}
				continue
			}
			named, ok := tn.Type().(*types.Named)
			if !ok {
				continue
			}
			for m := range named.Methods() {
				if !m.Exported() {
					continue
				}
				if viaInterface(named, m) {
					total++ // used through an interface (perhaps also directly)
					continue
				}
				classify(m, name+"."+m.Name(), "method", false)
			}
		}
	}

	counts := map[string]map[string]int{}
	for _, f := range found {
		if counts[f.pkg] == nil {
			counts[f.pkg] = map[string]int{}
		}
		counts[f.pkg][f.class]++
	}
	unused, own := 0, 0
	fmt.Println("## Exported identifiers of the pkg module that production code does not use")
	fmt.Println()
	fmt.Println("| package | unused outside tests | used in its own package only |")
	fmt.Println("| --- | ---: | ---: |")
	for _, p := range slices.Sorted(func(yield func(string) bool) {
		for k := range counts {
			if !yield(k) {
				return
			}
		}
	}) {
		fmt.Printf("| %s | %d | %d |\n", strings.TrimPrefix(p, root), counts[p]["unused"], counts[p]["own package only"])
		unused += counts[p]["unused"]
		own += counts[p]["own package only"]
	}
	fmt.Printf("| **all (%d exported identifiers counted)** | **%d** | **%d** |\n", total, unused, own)
	if verbose {
		fmt.Println()
		for _, f := range found {
			fmt.Printf("- %s: %s.%s (%s)\n", f.class, strings.TrimPrefix(f.pkg, root), f.name, f.kind)
		}
	}
	return nil
}

func kindOf(obj types.Object) string {
	switch obj.(type) {
	case *types.Func:
		return "func"
	case *types.TypeName:
		return "type"
	case *types.Const:
		return "const"
	case *types.Var:
		return "var"
	}
	return "?"
}

type importerFunc func(path string) (*types.Package, error)

func (f importerFunc) Import(path string) (*types.Package, error) { return f(path) }
