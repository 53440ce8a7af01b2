//! Importing a directory tree (see the module docs of `import`).
