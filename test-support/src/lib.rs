//! Shared by the end-to-end and packaging tests.
