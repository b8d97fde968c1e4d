"""Pruning: masks (parametrizations), importance criteria, coupled channel groups, schedules, heuristic
allocations, sensitivity scans, size metrics, and evaluating one candidate (prune, fine-tune, measure)."""
