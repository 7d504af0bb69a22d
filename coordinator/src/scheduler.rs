//! Placement decisions (in progress).
