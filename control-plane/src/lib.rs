//! The dynserv control plane.
