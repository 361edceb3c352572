"""Image stage (image3): resampling, outlier detection."""
