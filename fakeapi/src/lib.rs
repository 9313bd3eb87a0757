//! Fake API server (being written).
