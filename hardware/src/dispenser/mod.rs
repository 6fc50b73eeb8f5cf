//! Cash dispensers: the interface the agent programs against, the LCDM driver and the simulator.
