from hwbench.cli import main

# Zeus starts helper processes with the spawn method (power polling on pre-Volta GPUs, RAPL
# wrap-around tracking), and a spawned child imports the main module again: only run here.
if __name__ == "__main__":
    main()
