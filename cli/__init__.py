"""The `landscape` command line: a thin layer over the library."""
