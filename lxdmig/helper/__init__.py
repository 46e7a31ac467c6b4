"""lxdmig-helper: the per-host daemon that receives migrations."""
