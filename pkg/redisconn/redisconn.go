// Package redisconn turns CAO_REDIS_URL into the go-redis client a CAO process shares (with asynq
// among others) and into the equivalent asynq.RedisConnOpt for asynqmon. Besides one Redis server it
// accepts a Redis Cluster and a master behind Redis Sentinel:
//
//	redis://[user:password@]host[:port][/db][?option=value...]        one server (rediss: TLS)
//	unix://[user:password@]/path/to/redis.sock[?db=N&...]             one server on a Unix socket
//	redis+cluster://[user:password@]host:port[,host:port...][?...]    Redis Cluster (rediss+cluster: TLS)
//	redis+sentinel://[user:password@]host:port[,host:port...]/master[/db][?...]
//	                                                                  Sentinel (rediss+sentinel: TLS)
//
// The hosts of a cluster URL are seeds: any reachable one tells the client the cluster's layout
// (port 6379 when left out). A cluster has no database numbers, so a cluster URL takes none (a path
// of "/0" is accepted): a cluster serves one deployment. The hosts of a sentinel URL are the
// sentinels (port 26379 when left out) and the path names the monitored master and, optionally, the
// database. In every form the user and password are those of the Redis servers holding the data; they
// may also be given as the query options username and password. Sentinels that require a password of
// their own take sentinel_username and sentinel_password. Every other query option is go-redis's
// (snake case of its option fields: dial_timeout, read_timeout, pool_size, max_retries, ...; see
// redis.ParseURL, redis.ParseClusterURL and redis.ParseFailoverURL); unknown ones are refused.
//
// Errors never contain the URL or its passwords.
package redisconn

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// Mode is how CAO reaches Redis.
type Mode int

const (
	// Single is one Redis server (redis://, rediss://, unix://).
	Single Mode = iota
	// Cluster is a Redis Cluster (redis+cluster://, rediss+cluster://).
	Cluster
	// Sentinel is a master found through Redis Sentinel (redis+sentinel://, rediss+sentinel://).
	Sentinel
)

func (m Mode) String() string {
	switch m {
	case Cluster:
		return "cluster"
	case Sentinel:
		return "sentinel"
	case Single:
	}
	return "single"
}

// Syntax is the accepted forms of CAO_REDIS_URL, for error messages.
const Syntax = "redis://host[:port][/db], rediss://..., unix:///path/to/socket, " +
	"redis+cluster://host:port[,host:port...] or redis+sentinel://host:port[,host:port...]/master[/db]"

// Conn is a parsed CAO_REDIS_URL. It holds no connection: NewClient makes one.
type Conn struct {
	// Mode is the kind of deployment the URL names.
	Mode Mode
	// Addrs are the server (Single), the seed nodes (Cluster) or the sentinels (Sentinel), host:port.
	Addrs []string
	// MasterName is the master the sentinels monitor (Sentinel only).
	MasterName string
	// DB is the logical database (always 0 for a Cluster).
	DB int
	// TLS is whether connections use TLS.
	TLS bool

	raw string
}

// Parse checks a CAO_REDIS_URL and returns what it names.
func Parse(rawURL string) (*Conn, error) {
	p, err := parse(rawURL)
	if err != nil {
		return nil, err
	}
	c := &Conn{Mode: p.mode, raw: rawURL}
	switch p.mode {
	case Single:
		c.Addrs, c.DB, c.TLS = []string{p.single.Addr}, p.single.DB, p.single.TLSConfig != nil
	case Cluster:
		c.Addrs, c.TLS = p.cluster.Addrs, p.cluster.TLSConfig != nil
	case Sentinel:
		c.Addrs, c.MasterName, c.DB, c.TLS = p.failover.SentinelAddrs, p.failover.MasterName, p.failover.DB, p.failover.TLSConfig != nil
	}
	return c, nil
}

// String describes the connection for logs and errors, without credentials, e.g.
// "cluster 10.0.0.1:7000,10.0.0.2:7000" or "master mymaster via sentinels s1:26379,s2:26379".
func (c *Conn) String() string {
	addrs := strings.Join(c.Addrs, ",")
	switch c.Mode {
	case Cluster:
		return "cluster " + addrs
	case Sentinel:
		return "master " + c.MasterName + " via sentinels " + addrs
	case Single:
	}
	return addrs
}

// NewClient returns a new client: a *redis.Client for Single and Sentinel (a failover client that
// follows the master the sentinels name), a *redis.ClusterClient for Cluster. The caller closes it.
func (c *Conn) NewClient() redis.UniversalClient {
	// Every client gets options of its own (go-redis fills in defaults in place).
	p, err := parse(c.raw)
	if err != nil {
		panic("redisconn: a URL that parsed once no longer parses: " + err.Error())
	}
	switch p.mode {
	case Cluster:
		return redis.NewClusterClient(p.cluster)
	case Sentinel:
		return redis.NewFailoverClient(p.failover)
	case Single:
	}
	return redis.NewClient(p.single)
}

// AsynqConnOpt returns the asynq.RedisConnOpt of the same connection, for asynq's inspector and
// asynqmon: each MakeRedisClient is a NewClient, so every URL option (TLS, timeouts, pool sizes,
// credentials) applies there too.
func (c *Conn) AsynqConnOpt() asynq.RedisConnOpt { return connOpt{c} }

type connOpt struct{ c *Conn }

// MakeRedisClient implements asynq.RedisConnOpt.
func (o connOpt) MakeRedisClient() any { return o.c.NewClient() }

type parsed struct {
	mode     Mode
	single   *redis.Options
	cluster  *redis.ClusterOptions
	failover *redis.FailoverOptions
}

func parse(raw string) (*parsed, error) {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return nil, errors.New("not a URL; expected " + Syntax)
	}
	base, kind, _ := strings.Cut(strings.ToLower(scheme), "+")
	if base != "redis" && base != "rediss" && (base != "unix" || kind != "") {
		return nil, fmt.Errorf("unsupported scheme %q; expected %s", scheme, Syntax)
	}
	switch kind {
	case "":
		opt, err := redis.ParseURL(raw)
		if err != nil {
			return nil, clean(err)
		}
		return &parsed{mode: Single, single: opt}, nil
	case "cluster":
		return parseCluster(base, rest)
	case "sentinel":
		return parseSentinel(base, rest)
	}
	return nil, fmt.Errorf("unsupported scheme %q; expected %s", scheme, Syntax)
}

// multi is the parts of a URL whose authority lists several hosts.
type multi struct {
	user  *url.Userinfo
	hosts []string // host:port
	path  []string // non-empty path segments
	query url.Values
}

// splitMulti parses "[userinfo@]host[:port][,host[:port]...][/path][?query]". net/url cannot: it
// reads everything after the first host's colon as its port.
func splitMulti(rest, defaultPort string) (*multi, error) {
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	authority, tail := rest[:end], rest[end:]
	userinfo, hostlist := "", authority
	if i := strings.LastIndexByte(authority, '@'); i >= 0 {
		userinfo, hostlist = authority[:i+1], authority[i+1:]
	}
	// Let net/url decode the userinfo, path and query around a placeholder host.
	u, err := url.Parse("redis://" + userinfo + "placeholder" + tail)
	if err != nil {
		return nil, clean(err)
	}
	if u.Fragment != "" {
		return nil, errors.New("a fragment (#...) is not allowed")
	}
	m := &multi{user: u.User, query: u.Query()}
	for _, seg := range strings.Split(u.Path, "/") {
		if seg != "" {
			m.path = append(m.path, seg)
		}
	}
	for i, h := range strings.Split(hostlist, ",") {
		addr, err := hostPort(strings.TrimSpace(h), defaultPort)
		if err != nil {
			// Never quote the host: with an unescaped '/' in the password, it holds part of it.
			return nil, fmt.Errorf("host %d of the host list: %w", i+1, err)
		}
		m.hosts = append(m.hosts, addr)
	}
	return m, nil
}

// hostPort checks one host of a host list and adds the default port when it has none.
func hostPort(h, defaultPort string) (string, error) {
	if h == "" {
		return "", errors.New("empty host")
	}
	host, port := h, defaultPort
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		host = h[1 : len(h)-1] // [IPv6] without a port
	} else if strings.Contains(h, ":") {
		var err error
		if host, port, err = net.SplitHostPort(h); err != nil {
			return "", errors.New("bad host: want host:port ([host]:port for IPv6)")
		}
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", errors.New("bad port")
	}
	if host == "" || strings.ContainsAny(host, "/?#@ ") {
		return "", errors.New("bad host")
	}
	return net.JoinHostPort(host, port), nil
}

// credentials takes the data servers' user and password from the userinfo or from the username and
// password query options (removing those), refusing both at once.
func (m *multi) credentials() (user, password string, err error) {
	if m.user != nil {
		user = m.user.Username()
		password, _ = m.user.Password()
	}
	for _, kv := range []struct {
		name string
		dst  *string
	}{{"username", &user}, {"password", &password}} {
		if !m.query.Has(kv.name) {
			continue
		}
		if *kv.dst != "" {
			return "", "", fmt.Errorf("the %s is given both before the @ and as the %s option", kv.name, kv.name)
		}
		*kv.dst = m.query.Get(kv.name)
		m.query.Del(kv.name)
	}
	return user, password, nil
}

// take removes a query option and returns its value.
func (m *multi) take(name string) string {
	v := m.query.Get(name)
	m.query.Del(name)
	return v
}

// goRedisURL builds the single-host URL from which go-redis's own parsers read the remaining query
// options: the first host, the others as addr options.
func (m *multi) goRedisURL(scheme, path string) string {
	q := url.Values{}
	for k, v := range m.query {
		q[k] = v
	}
	for _, h := range m.hosts[1:] {
		q.Add("addr", h)
	}
	return (&url.URL{Scheme: scheme, Host: m.hosts[0], Path: path, RawQuery: q.Encode()}).String()
}

func parseCluster(scheme, rest string) (*parsed, error) {
	m, err := splitMulti(rest, "6379")
	if err != nil {
		return nil, fmt.Errorf("redis+cluster URL: %w", err)
	}
	if len(m.path) > 1 || (len(m.path) == 1 && m.path[0] != "0") || m.query.Has("db") {
		return nil, errors.New("redis+cluster URL: a Redis Cluster has no database numbers, remove the path " +
			"(one cluster serves one CAO deployment)")
	}
	user, password, err := m.credentials()
	if err != nil {
		return nil, fmt.Errorf("redis+cluster URL: %w", err)
	}
	opt, err := redis.ParseClusterURL(m.goRedisURL(scheme, ""))
	if err != nil {
		return nil, fmt.Errorf("redis+cluster URL: %w", clean(err))
	}
	opt.Username, opt.Password = user, password
	if opt.TLSConfig != nil {
		// go-redis names the first seed as the server of every node; let each connection check the
		// certificate against the host it dials instead.
		opt.TLSConfig.ServerName = ""
	}
	return &parsed{mode: Cluster, cluster: opt}, nil
}

func parseSentinel(scheme, rest string) (*parsed, error) {
	m, err := splitMulti(rest, "26379")
	if err != nil {
		return nil, fmt.Errorf("redis+sentinel URL: %w", err)
	}
	if len(m.path) == 0 || len(m.path) > 2 {
		return nil, errors.New("redis+sentinel URL: the path must name the master: /master or /master/db")
	}
	if m.query.Has("master_name") {
		return nil, errors.New("redis+sentinel URL: the master is named by the path, not by master_name")
	}
	db := "0"
	if len(m.path) == 2 {
		if n, err := strconv.Atoi(m.path[1]); err != nil || n < 0 {
			return nil, fmt.Errorf("redis+sentinel URL: invalid database number %q", m.path[1])
		}
		db = m.path[1]
	}
	user, password, err := m.credentials()
	if err != nil {
		return nil, fmt.Errorf("redis+sentinel URL: %w", err)
	}
	sentinelUser, sentinelPassword := m.take("sentinel_username"), m.take("sentinel_password")
	m.query.Set("master_name", m.path[0])
	opt, err := redis.ParseFailoverURL(m.goRedisURL(scheme, "/"+db))
	if err != nil {
		return nil, fmt.Errorf("redis+sentinel URL: %w", clean(err))
	}
	opt.Username, opt.Password = user, password
	opt.SentinelUsername, opt.SentinelPassword = sentinelUser, sentinelPassword
	if opt.TLSConfig != nil {
		opt.TLSConfig.ServerName = "" // as for a cluster: each host is checked by its own name
	}
	return &parsed{mode: Sentinel, failover: opt}, nil
}

// clean drops a net/url error's text: it quotes the URL or a part of it (a port, a host), which may
// hold a password, for example one with an unescaped '/'.
func clean(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return errors.New("invalid URL (characters such as / ? # @ in a password must be percent-encoded)")
	}
	return err
}
