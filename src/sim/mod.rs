//! An in-process 1Password Connect simulator.
