//! Manifest parsing (in progress).
