//! Messages of the native ZeroMQ API. Filled in by the native host work (issue 3).
