"""The small core every family uses: config, artifact folders, manifests, hashes, memory tools, the family registry; imports no family."""
