"""A run's configuration: defaults, the method's preset for the data's scale, the user's keys; schema; recipe."""
