"""The operator console (``/console``): sign-in, roles, CSRF and audit; the dashboard, customers and
tiered broadcasts as server-rendered pages, with Apache ECharts vendored in ``static/``."""
