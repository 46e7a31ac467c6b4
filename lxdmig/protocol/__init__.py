"""The wire protocol between ``lxdmig`` and ``lxdmig-helper``."""
