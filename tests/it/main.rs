//! End-to-end tests against the real Docker engine. They need dockerd and the images from `images/build.sh`;
//! without them they fail loudly (never skip).

mod common;
mod sandbox;
