//! Test support for dicomnode end-to-end tests.
