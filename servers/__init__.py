"""secagg's processes: server A (coordinator and selector), server B (helper), the dealer."""
