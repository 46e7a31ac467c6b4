"""Moving a container: the policy (pure), the steps, the report."""
