//! Importing a tar stream: plain, gzip or zstd (see the module docs of `import`).
