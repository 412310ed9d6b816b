(names) => [names.filter(
    (name, i) => !names.slice(i + 1).some((later) => later.split("_")[0] === name.split("_")[0]))]
