// Empty: its presence lets main.go declare getFixtures without a body
// (the body is PSA's, reached with go:linkname).
