(names) => [names.slice(-1)]
