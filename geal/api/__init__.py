"""The contracts every other part of GEAL builds on: image pools, selectors, tasks, feature sources."""
