//! Integration tests: the client against the scripted server over real loopback HTTP.

mod client;
mod errors;
mod fallback;
mod routing;
