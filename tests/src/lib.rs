//! Harness for end-to-end tests: runs the real binaries.
