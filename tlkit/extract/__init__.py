"""Images to feature vectors: decoding, preprocessing pipelines, the extraction loop, the feature cache, runtimes."""
