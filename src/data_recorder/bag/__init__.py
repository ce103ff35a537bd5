"""The MCAP file format below the bag: a damage-tolerant scanner, verification and salvage."""
