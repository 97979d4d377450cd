// Reading the rounds of GET /runs/{id}/metrics (and of round_finished events).

/** The nodes that took part in any round, sorted (so each keeps its colour). */
export function nodeIds(rounds) {
  return [...new Set(rounds.flatMap((r) => r.nodes.map((n) => n.node)))].sort();
}

/** A node's part in a round's stage ("train" or "evaluate"), or undefined. */
export function part(round, node, stage) {
  return round.nodes.find((n) => n.node === node && n.stage === stage);
}

/** One series per node: [round, pick(part)] for each round where the node took `stage`. */
export function perNode(rounds, stage, pick) {
  return nodeIds(rounds).map((node) => ({
    name: node,
    points: rounds.flatMap((r) => {
      const mine = part(r, node, stage);
      const value = mine && mine.outcome === "ok" ? pick(mine) : undefined;
      return value === undefined || value === null ? [] : [[r.round, value]];
    }),
  }));
}

/** The aggregated metric names over every round (eval_auc, train_loss, ...). */
export function globalKeys(rounds) {
  return [...new Set(rounds.flatMap((r) => Object.keys(r.metrics)))].sort();
}

/** The aggregated metric to show first. */
export function preferredKey(keys) {
  return ["eval_auc", "eval_accuracy", "eval_loss", "central_auc", "train_loss"].find((k) => keys.includes(k)) || keys[0];
}

/** Add a round (from an event) to the list, in order, replacing a round already there. */
export function merge(rounds, round) {
  const rest = rounds.filter((r) => r.round !== round.round);
  return [...rest, round].sort((a, b) => a.round - b.round);
}
