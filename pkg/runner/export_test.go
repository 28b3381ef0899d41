package runner

// KeySemaphore exposes keySemaphore to the package's external tests.
func KeySemaphore(service, value string) string { return keySemaphore(service, value) }
