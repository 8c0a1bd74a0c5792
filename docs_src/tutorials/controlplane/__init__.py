"""Control-plane tutorial: a versioned config store over HTTP, in five steps."""
