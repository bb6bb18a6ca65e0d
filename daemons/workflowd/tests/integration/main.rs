//! workflowd with its real binary, a real nats-server and a real SQLite file.
mod binary;
