"""The small core every family uses: config, artifact folders, manifests, hashes, memory, the registry."""
