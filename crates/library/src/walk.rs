//! Safe directory reading: openat2 beneath a root, never following a symlink or opening a device.
