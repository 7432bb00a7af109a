from gpo_services.trainer.service import main

if __name__ == "__main__":
    main()
