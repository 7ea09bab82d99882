"""The language: Netsor programs (nodes, `Program`, builders), nonlinearities that own their closed forms, the
composite layers of a transformer, and the semantics of derived nodes that every interpreter shares."""
