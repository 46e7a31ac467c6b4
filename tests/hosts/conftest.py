"""The two-host suite runs only when asked for (-m hosts, make test-hosts): it boots two VMs."""
