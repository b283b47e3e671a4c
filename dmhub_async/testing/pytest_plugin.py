"""pytest plugin: the DM Hub simulator fixtures."""
