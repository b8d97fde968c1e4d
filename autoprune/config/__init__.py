"""Plain data, loadable without torch: the search space and policy schemas, YAML with line numbers, the budget
projection, Pareto helpers and the records passed between layers."""
