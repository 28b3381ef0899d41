package runner

// KeySemaphore exposes keySemaphore to the package's external tests.
func KeySemaphore(service, value string) string { return keySemaphore(service, value) }

// Stolen returns how many tasks r took from their queue for the bell.
func Stolen(r *Runner) int64 { return r.stolen.Load() }
