//! End-to-end: `rolloutctl` (the real binary, as separate processes) against the sandbox and a
//! real Prometheus. Each test is bounded in time and talks only to 127.0.0.1.

mod controller;
mod evidence;
mod fencing;
mod operators;
mod packaging;
mod rollouts;
mod safety;
mod sharing;
mod stacks;
mod standard;
mod world;
