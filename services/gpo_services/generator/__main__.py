from gpo_services.generator.service import main

if __name__ == "__main__":  # vLLM starts its engine in a spawned process: keep this guard
    main()
