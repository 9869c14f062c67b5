"""Helpers of the original pipeline, mirrored: ChatFormatter, KVCacheManager."""
