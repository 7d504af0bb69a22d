//! Wire ↔ domain conversions.
