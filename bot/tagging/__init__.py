"""One tag system (seed 003: 标签一定要成系统): canonical tags with aliases, auto-tag rules,
and two-way mirroring with WeCom's corp tags."""
