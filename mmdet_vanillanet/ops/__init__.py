"""Operations the VanillaNet modules call."""
