//! Store tests that need more than one process.

mod two_processes;
