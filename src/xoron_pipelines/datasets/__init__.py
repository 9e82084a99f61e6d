"""Custom Kedro datasets of xoron-pipelines (one module per dataset kind)."""
