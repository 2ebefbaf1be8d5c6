"""The hub: the download stage, and publishing (Hub API or git + LFS), model cards, a minimal Hub-compatible server."""
