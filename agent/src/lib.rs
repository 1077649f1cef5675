//! dynserv-agent library.
