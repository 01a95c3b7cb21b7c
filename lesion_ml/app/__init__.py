"""The application edge: the `lesion` command line, the benchmarks, the Prefect server and the dvc command line
that drive the library."""
